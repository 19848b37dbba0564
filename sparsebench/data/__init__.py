"""Text corpora: named datasets (hub or offline copies) and local files, selected deterministically."""

from sparsebench.data.loaders import Corpus, Document, load_corpus, select_documents, tokenize_documents

__all__ = ["Corpus", "Document", "load_corpus", "select_documents", "tokenize_documents"]
