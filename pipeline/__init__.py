"""The orchestration, graine's top layer: the stage registry, the run's config class, the runner and
its executors (inline, local processes, Slurm through submitit), job tasks, sbatch rendering, the run
lock, status and the `graine` command."""
