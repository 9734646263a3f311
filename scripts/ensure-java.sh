#!/usr/bin/env bash
# Spark needs a Java runtime (17 or 21). Install OpenJDK 17 when missing and we are root
# on a Debian/Ubuntu machine; otherwise say what to install.
set -euo pipefail
if command -v java >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "java not found: installing openjdk-17-jre-headless" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null
  exit 0
fi
echo "error: Spark needs Java 17 or 21 on PATH (e.g. apt-get install openjdk-17-jre-headless, or brew install openjdk@17)" >&2
exit 1
