"""What data exists: the records of sources, their versions, shares and files (tables), and
the immutable snapshots of them that caches and capabilities hold. Below `access`, which
decides who may open them, and `data`, which stores and reads their rows."""
