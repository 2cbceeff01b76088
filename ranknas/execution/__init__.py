"""Running trials: local and Ray Tune executors, the trial journal."""
