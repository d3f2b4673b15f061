"""Making runs: plan which cells a table still needs, prepare what they share, execute them (local pool, Ray,
SLURM) and write each through the run record. Entry point: `ablate run-all` (cli.py) -> runner.execute_run per
cell; record.py is the one module that reads and writes a run folder."""
