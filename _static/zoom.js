// hctrain book: a figure opens at its full size in a new tab when clicked (click-to-zoom on a
// small screen, where the page scales figures down).
document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll(".cell_output img").forEach((img) => {
    img.style.cursor = "zoom-in";
    img.title = img.title || "Open the figure at full size";
    img.addEventListener("click", () => window.open(img.currentSrc || img.src, "_blank", "noopener"));
  });
});
