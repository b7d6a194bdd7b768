"""The official CDPruner code's tensor function, from github.com/Theia-4869/CDPruner at commit
9541616c40fcd5625de1cdb8ea6c33c129eb7864, llava/model/llava_arch.py: the body of
``LlavaMetaForCausalLM.encode_images`` after the tower call, verbatim; adapted only in that what it
read from the model (the tower's outputs, ``mm_projector``, ``visual_token_num``) are its arguments."""

import torch


def official_encode(image_features, image_embeds, text_embeds, mm_projector, visual_token_num):
    B, N, C = image_features.shape
    device = image_features.device
    index_masks = torch.ones(B, N, dtype=torch.bool, device=device)

    image_features = mm_projector(image_features)

    # [CDPruner] Calculate cosine similarity
    image_normalized = image_features / image_features.norm(dim=-1, keepdim=True) # (B, N, D)
    image_normalized = image_normalized.float() # (B, N, D)
    similarity = torch.matmul(image_normalized, image_normalized.transpose(1, 2)) # (B, N, N)

    # [CDPruner] Calculate query relevance
    image_embeds = image_embeds / image_embeds.norm(dim=-1, keepdim=True) # (B, N, C)
    text_embeds = text_embeds / text_embeds.norm(dim=-1, keepdim=True) # (M, C)
    relevance = torch.matmul(image_embeds, text_embeds.t()) # (B, N, M)
    relevance = (-relevance).mean(dim=-1) # (B, N)
    relevance = (relevance - relevance.min() + 1e-6) / (relevance.max() - relevance.min()) # (B, N)

    # [CDPruner] Construct kernel matrix
    # You can use an additional hyperparameter theta to control the influence of the relevance score.
    # theta = 0.5
    # alpha = theta / (2 * (1 - theta))
    # relevance = torch.exp(alpha * relevance) # (B, N)
    kernel = relevance.unsqueeze(2) * similarity * relevance.unsqueeze(1) # (B, N, N)

    # [CDPruner] Fast MAP inference of conditional DPP
    cis = torch.zeros((visual_token_num, B, N), device=device) # (T, B, N)
    di2s = torch.diagonal(kernel, dim1=1, dim2=2).clone() # (B, N)
    select_idx = torch.empty((visual_token_num, B), dtype=torch.long, device=device) # (T, B)
    for i in range(visual_token_num):
        j = torch.argmax(di2s, dim=-1)
        select_idx[i] = j

        eis = (kernel[torch.arange(B), j] - torch.einsum('tb,tbn->bn', cis[:i, torch.arange(B), j], cis[:i])) \
            / torch.sqrt(di2s[torch.arange(B), j]).unsqueeze(-1)
        cis[i, :, :] = eis
        di2s -= torch.square(eis)
        di2s[torch.arange(B), j] = -float('inf')

    select_idx = torch.sort(select_idx.t()).values # (B, T)
    index_masks = torch.zeros(B, N, dtype=torch.bool, device=device)
    index_masks.scatter_(1, select_idx, True)

    return image_features, index_masks


# From the same commit, llava/model/multimodal_encoder/clip_encoder.py: `CLIPVisionTower.forward`'s text
# branch and its image embeddings, verbatim; adapted only in that the CUDA streams are dropped (CPU) and
# what it read from the tower (`text_tokenizer`, `text_tower`, `max_position_embeddings`, the vision model,
# `visual_projection`, the selected `image_outputs`) are its arguments.
def official_embeds(texts, text_tokenizer, text_tower, max_position_embeddings, vision_model, visual_projection, image_outputs, device):
    text_inputs = text_tokenizer(text=texts, return_tensors="pt")
    text_segment = (text_inputs.input_ids.shape[1] - 1) // max_position_embeddings + 1
    text_padding = max_position_embeddings * text_segment - text_inputs.input_ids.shape[1]
    text_inputs = {
        k: torch.cat([v, v.new_zeros((v.shape[0], text_padding))],
                     dim=1).reshape(-1, max_position_embeddings).to(device=device)
        for k, v in text_inputs.items()
    }
    text_embeds = text_tower(**text_inputs).text_embeds

    image_embeds = vision_model.post_layernorm(image_outputs)
    image_embeds = visual_projection(image_embeds.float())
    return image_embeds, text_embeds
