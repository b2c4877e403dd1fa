"""Identity: the city's digital ID as SD-JWT VC credentials, presented to agencies."""
