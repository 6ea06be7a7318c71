"""Training: the GAN loop, pretraining, run folders, checkpoints, EMA, distributed setup."""
