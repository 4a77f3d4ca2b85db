"""Benchmarks: the same tuning workload through a plain loop, skorch + GridSearchCV, Optuna, raw Ray Tune
and raytune_torch, in one sitting. Run ``python benchmarks/run.py --help``; see benchmarks/README.md."""
