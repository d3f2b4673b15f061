"""Making runs: plan which cells a table still needs, prepare what they share, execute them (local pool, Ray,
SLURM) and write each through the run record. Entry point: `ablate run-all` (cli.py) -> run_all.run_table ->
runner.execute_run per cell. record.py is the one module that reads and writes a run folder; identity.py says
what a run's settings hash to, provenance.py where and with what it was made, table_files.py the table
folder's own files (timing, verify log, references, lock)."""
