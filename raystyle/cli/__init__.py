"""The `raystyle` command line: argparse and one function per command; the demo."""
