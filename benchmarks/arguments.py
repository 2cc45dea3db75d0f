"""The command line the benchmark scripts share: usage errors as one line, exit 2,
``--help`` that shows the script's docstring as written (its usage examples) and every
default, and an error said in its first sentence."""
import argparse


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, ``error: ...``, exit 2."""

    def error(self, message):
        self.exit(2, f"error: {message}\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                    argparse.RawDescriptionHelpFormatter):
    """--help: the module's docstring as written (usage examples), each default shown."""


def first_line(err: BaseException) -> str:
    """An error's first sentence (torch's and ONNX Runtime's run on for lines)."""
    line = next((x.strip() for x in str(err).splitlines() if x.strip()), type(err).__name__)
    return line.split(". ")[0]
