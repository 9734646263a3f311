"""Configuration profiles (YAML). A package only so that the files ship in the wheel."""
