"""Column rules in the web UI (issue 14 §1): the policy form's hide/mask fields, the policies
list, and the previews ("see the data as" a key, "what would this person see") showing the
hidden and masked columns as such, exactly as the API returns them to the key."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.web.test_data_access import SALES_CSV, api_rows, member_with_key, preview_as, preview_rows, upload_csv


def test_hidden_and_masked_columns_in_the_form_the_list_and_the_previews(ui_factory, web):
    mia, mia_key = member_with_key(web, "mia.columns@acme.test")
    admin = ui_factory("admin")
    page = admin.page
    admin.sign_in(web.admin_email, web.admin_password)
    source_id = upload_csv(admin, "Sales columns", "sales.csv", SALES_CSV)
    page.get_by_label("Share with", exact=True).select_option(label="mia.columns@acme.test")
    page.get_by_label("Permission", exact=True).select_option("view")
    with page.expect_navigation():
        page.get_by_role("button", name="Share", exact=True).click()

    admin.goto("/settings/security/access-policies", label="policies")
    page.get_by_role("button", name="New policy").click()
    page.wait_for_load_state("load")
    page.get_by_label("Name", exact=True).fill("No amounts")
    page.get_by_label("Hide these columns").fill("AMOUNT")
    page.get_by_label("Mask these columns").fill("product\n")
    with page.expect_navigation():
        page.get_by_role("button", name="Create policy").click()
    expect(page.get_by_role("status")).to_contain_text("The access policy was created")
    policy_id = page.url.split("/access-policies/")[1].split("?")[0]
    expect(page.get_by_label("Hide these columns")).to_have_value("AMOUNT")
    expect(page.get_by_label("Mask these columns")).to_have_value("product")
    page.get_by_label("Assign to a person").select_option(label="mia.columns@acme.test")
    with page.expect_navigation():
        page.get_by_role("button", name="Assign", exact=True).click()

    preview_as(admin, source_id, mia_key["id"], "mia-columns")
    headers = page.locator("[data-preview-rows] thead th").all_inner_texts()
    assert [h.split()[0] for h in headers] == ["order_id", "region", "product"]
    expect(page.locator("[data-masked-header]")).to_have_count(1)
    expect(page.locator("[data-hidden-column]")).to_have_text(["amount"])
    expect(page.locator("[data-masked-column]")).to_have_text(["product"])
    rows = preview_rows(admin)
    assert [r[2] for r in rows] == ["W***", "G***", "G***", "W***", "W***", "G***"]
    assert api_rows(web, mia_key["secret"], source_id) == (200, rows)  # the preview is what the API returns
    preview_as(admin, source_id, "me", "admin-columns")
    assert len(preview_rows(admin)[0]) == 4  # the admin, whom no rule reaches

    admin.goto("/settings/security/access-policies", label="policies-columns")
    listed = page.locator(f'tr[data-policy-id="{policy_id}"] [data-column-rules]')
    expect(listed).to_contain_text("hide AMOUNT")
    expect(listed).to_contain_text("mask product")
    page.get_by_label("Person", exact=True).select_option(label="mia.columns@acme.test")
    page.get_by_label("Source", exact=True).select_option(label="Sales columns")
    with page.expect_navigation():
        page.get_by_role("button", name="Preview", exact=True).click()
    expect(page.locator("[data-hidden-column]")).to_have_text(["amount"])
    assert preview_rows(admin) == rows

    # One column both hidden and masked: refused at the mask field in plain words, nothing saved.
    admin.goto(f"/settings/security/access-policies/{policy_id}", label="policy-columns-edit")
    page.get_by_label("Mask these columns").fill("amount")
    admin.expect_status(400)
    with page.expect_navigation():
        page.get_by_role("button", name="Save changes").click()
    expect(page.locator("#error-masked_columns")).to_have_text("amount is also hidden: list each column once.")
    expect(page.get_by_label("Mask these columns")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Mask these columns")).to_be_focused()
    assert api_rows(web, mia_key["secret"], source_id) == (200, rows)
