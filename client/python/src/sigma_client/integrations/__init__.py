"""Framework integrations: huggingface.SigmaCallback (transformers.TrainerCallback),
lightning.SigmaCallback (lightning Callback), tensorboard.log_reports (SummaryWriter,
and W&B when installed). Each module imports its framework only when imported itself."""
