from hires_nst.cli import main

main()
