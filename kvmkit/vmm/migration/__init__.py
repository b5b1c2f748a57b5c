"""Live migration and migration streams: one stream format (a snapshot's
records plus memory pages, in versioned, checksummed sections) carried by
the transports QEMU has (``file:``, ``exec:``, ``unix:``, ``tcp:``)."""
