"""The certificate-authority feature of the service: SQL repositories for the :mod:`ca` engine,
wiring, REST views and the ``csm ca`` CLI."""
