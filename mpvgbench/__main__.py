from mpvgbench.cli import main

main()
