"""Job runtimes: Docker containers, or plain processes where Docker is absent."""
