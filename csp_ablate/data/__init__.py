"""LightningDataModules. Importing a submodule imports torch; this package init does not."""
