"""GFN2-xTB labelling: conformer generation, single points and the resumable labelling runner."""
