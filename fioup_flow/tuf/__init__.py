"""TUF as a FoundriesFactory serves it, verified on the device.

`flavour` reads the factory's metadata format into python-tuf and securesystemslib objects,
`trusted_set` holds the rules of the client workflow (python-tuf's TrustedMetadataSet, step by
step), `roots` finds the roots the OS image ships, and `updater` fetches through the gateway and
keeps only what verified.
"""
