"""The command line the benchmark scripts share: usage errors as one line, exit 2, and
``--help`` that shows the script's docstring as written (its usage examples) and every
default."""
import argparse


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, ``error: ...``, exit 2."""

    def error(self, message):
        self.exit(2, f"error: {message}\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                    argparse.RawDescriptionHelpFormatter):
    """--help: the module's docstring as written (usage examples), each default shown."""
