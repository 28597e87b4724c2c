"""What a stage is (stage.py) and the one registry of stage kinds (registry.py); the stages live in compress/ and export/."""
