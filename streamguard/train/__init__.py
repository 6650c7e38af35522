"""A2V predictor training (paper App. A), one job per module:

- options.py: `TrainOptions`, the run's hyperparameters (no torch import, for the CLI);
- features.py: `extract_features`, per-chunk (audio tokens, mean video token) pairs from a folder
  of videos through the frozen backbone, with a resumable on-disk cache;
- trainer.py: `train_predictor`, the loss, the loop, checkpoints, resume, validation;
- retrieval.py: audio-to-video R@1/R@5/MedR (App. A.2);
- report.py: report.json and the printed tables;
- job.py: `train_a2v`, what `streamguard train-a2v` runs.

Nothing is imported here, so reading `TrainOptions` does not load torch.
"""
