"""`python -m linetap.agent.cli` = `linetap`."""

from linetap.agent.cli import main

main()
