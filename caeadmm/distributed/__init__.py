"""The Ray layer: everything that imports Ray. The core outside this package never does."""
