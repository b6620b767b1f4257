from s3batchd.cli import main

if __name__ == "__main__":
    main()
