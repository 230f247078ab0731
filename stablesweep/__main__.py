from stablesweep.cli import run

run()
