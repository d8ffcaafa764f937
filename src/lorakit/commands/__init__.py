"""The subcommands of ``lorakit`` other than ``train``: each parses its options, calls one stage and prints."""
