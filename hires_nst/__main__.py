from hires_nst.cli.main import main

if __name__ == "__main__":  # not when a batch worker process (spawn) imports the main module
    main()
