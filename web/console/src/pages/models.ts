import { h, replace } from "../dom";
import type { Page } from "../main";

export async function renderModels(p: Page): Promise<void> {
  replace(p.main, h("h1", {}, "Models"));
}
