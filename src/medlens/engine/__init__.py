"""Training engine: LightningModules per task, callbacks and the Trainer factory."""
