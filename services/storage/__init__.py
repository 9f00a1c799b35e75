"""The storage service: object bytes behind `comfyfleet.storage.v1.StorageService`.

Streamed put and get, deletion by key or prefix, and expiring download URLs. Backends sit
behind the small interface in `backend.py`: `local` (a directory) and `s3` (MinIO or any S3).
"""
