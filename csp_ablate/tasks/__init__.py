"""LightningModules, one per task (classification, detection)."""
