"""The qcow2 format: header, L1/L2 mapping, refcounts, snapshots, check."""
