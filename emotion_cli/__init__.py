"""The command line of ``train_cli.py`` (console script ``emotion``): argparse flags and the verbs that read them.

Kept apart from ``emotion/``, the importable library, which has no argparse: ``flags`` and ``train_flags`` build the
parser, ``training_commands`` and ``inference_commands`` turn parsed flags into library calls.
"""
