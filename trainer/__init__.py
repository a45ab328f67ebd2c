"""The trainer: crop batches, the training loop, presets and the `trainer` CLI.

Library entry point: `sinfusion.trainer.training.train_bundle(clip, out_dir, config)`; see
docs/training.md.
"""
