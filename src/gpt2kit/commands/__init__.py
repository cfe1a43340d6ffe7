"""One module per command; each defines `add_parser(subparsers)` and an optional `ORDER`."""
