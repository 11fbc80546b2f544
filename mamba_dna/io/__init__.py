"""File formats at the edges: `vcf` (variants in, scores out), `hdf5` (embeddings).

Submodules are imported on use (`from mamba_dna.io.vcf import VcfReader`), so importing the
package costs nothing.
"""
