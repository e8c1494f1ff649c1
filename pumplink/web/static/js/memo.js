// Preact's memo lives in preact/compat; this is its few lines, to avoid shipping compat.
import { Component } from "../vendor/preact.js";

export function memo(render) {
  class Memoed extends Component {
    shouldComponentUpdate(next) {
      for (const k in next) if (next[k] !== this.props[k]) return true;
      for (const k in this.props) if (!(k in next)) return true;
      return false;
    }
    render(props) { return render(props); }
  }
  Memoed.displayName = render.name;
  return Memoed;
}
