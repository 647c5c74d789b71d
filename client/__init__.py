"""On-device side of fedrec: the client SDK that keeps a person's text and history local."""
