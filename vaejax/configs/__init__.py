"""Experiment configs: the shared blocks of the experiment files (`common`)
and loading a file outside the command line (`loading`)."""
