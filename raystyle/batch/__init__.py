"""[ray] Ray Data batch jobs: images, videos, NST."""
