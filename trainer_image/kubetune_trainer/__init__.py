"""The kubetune trainer: data, Ray Train + DeepSpeed loop, checkpoints, evaluation, reporting."""
