"""Template of a third-party vcrd plugin distribution."""
