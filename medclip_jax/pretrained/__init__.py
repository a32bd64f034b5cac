"""Published weights into our linen param trees (issue 6; so far: HF BertModel)."""
