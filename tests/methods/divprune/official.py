"""The official DivPrune code's tensor functions, carried verbatim from github.com/vbdi/divprune,
LLaVA/llava/model/llava_arch.py at commit 799e2d950aa01ba7860907f5a6d86061f885dca6 (methods of
``LlavaMetaForCausalLM`` there; adapted only in that they sit on a bare class here). The official
code runs them on one image's projected tokens and keeps the picked rows in ascending order
(``keep_indexs.sort()``)."""

import torch


class Official:
    # divprune
    def pairwise_cosine_similarity(self, matrix):
        norm_matrix = matrix / matrix.norm(dim=1, keepdim=True)
        cosine_similarity = torch.mm(norm_matrix, norm_matrix.t())
        return cosine_similarity

    def DivPrune(self, visual_feature_vectors, image_feature_length, cosine_matrix=None, threshold_ratio=0.1):
        threshold_terms = int(round(threshold_ratio*image_feature_length))
        if cosine_matrix is None:
            cosine_matrix = 1.0 - (self.pairwise_cosine_similarity(visual_feature_vectors))

        s = torch.empty(threshold_terms, dtype=torch.long, device=visual_feature_vectors.device)
        for i in range(threshold_terms):
            if i==0:
                m2 = cosine_matrix
            else:
                m2 = torch.index_select(cosine_matrix, 0, torch.index_select(s,0,torch.arange(0,i,device=cosine_matrix.device)))

            if i==0:
                scores = torch.topk(m2, 2,dim=0,largest=False).values[1,:] #for distance
            else:
                scores = torch.min(m2, dim=0).values #for distance

            phrase_to_add_idx = torch.argmax(scores)
            s[i] = phrase_to_add_idx
        return s, cosine_matrix
