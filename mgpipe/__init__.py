"""mgpipe: micro-gesture recognition pipeline."""
# heatmaps.h5 and rgb.h5 are zstd-compressed (mgpipe.io.H5_COMPRESSION): importing
# hdf5plugin registers the filter with HDF5, so any h5py read in a process that imported
# mgpipe works.
import hdf5plugin  # noqa: F401

__version__ = "0.1.0"
