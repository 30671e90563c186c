"""The `raystyle` command line, argparse only: main.py (the parser, the error mapping, the
entry point), one module per command or family (train, export, stylize, serve, evaluate,
data, demo, batch, nst) and common.py (what several share). The work is in the library."""
