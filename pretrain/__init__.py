"""K2 pretraining (accelerate + DeepSpeed)."""
