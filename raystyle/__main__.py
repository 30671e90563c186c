from raystyle.cli.main import entrypoint

entrypoint()
